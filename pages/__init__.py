"""One Streamlit script per dashboard page; each reads input, calls raiox_core, renders."""
