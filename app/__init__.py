"""The Streamlit dashboard: routing, cached resources and shared widgets over raiox_core."""
