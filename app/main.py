"""Dashboard entrypoint: routing only (st.navigation over pages/)."""

from pathlib import Path

import streamlit as st

from app.widgets import sidebar

PAGES = Path(__file__).resolve().parent.parent / "pages"

st.set_page_config(page_title="Raiox: implant identification", page_icon="🦷", layout="wide")
match = st.Page(PAGES / "match.py", title="Match an X-ray", icon="🔍", url_path="match")


def home() -> None:
    # The default page is served at "/" whatever its url_path; a hidden one that forwards keeps /match real.
    st.switch_page(match)


page = st.navigation(
    [
        st.Page(home, title="Home", url_path="home", default=True, visibility="hidden"),
        match,
        st.Page(PAGES / "references.py", title="References", icon="🗂️", url_path="references"),
        st.Page(PAGES / "explorer.py", title="Embedding explorer", icon="🧭", url_path="explorer"),
        st.Page(PAGES / "ingest.py", title="Ingest (staff)", icon="📥", url_path="ingest"),
    ]
)
sidebar()
page.run()
