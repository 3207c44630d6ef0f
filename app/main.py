"""Dashboard entrypoint: routing only (st.navigation over pages/).

Icons are Streamlit's bundled Material Symbols: emoji render as empty boxes on machines without emoji fonts.
"""

import streamlit as st

from raiox_core import numba_warmup, process
from raiox_core.packaged import dashboard_pages
from raiox_dashboard.resources import get_settings
from raiox_dashboard.widgets import sidebar

process.configure()  # once per process: numba's cache before the explorer imports umap, log masking, malloc
PAGES = dashboard_pages()

# The favicon alone is an emoji: Streamlit fetches a :material/...: favicon from fonts.gstatic.com, off this machine.
st.set_page_config(page_title="Raiox: implant identification", page_icon="🦷", layout="wide")
match = st.Page(PAGES / "match.py", title="Match an X-ray", icon=":material/search:", url_path="match")


def home() -> None:
    # The default page is served at "/" whatever its url_path; a hidden one that forwards keeps /match real.
    st.switch_page(match)


page = st.navigation(
    [
        st.Page(home, title="Home", url_path="home", default=True, visibility="hidden"),
        match,
        st.Page(PAGES / "references.py", title="References", icon=":material/photo_library:", url_path="references"),
        st.Page(PAGES / "explorer.py", title="Embedding explorer", icon=":material/scatter_plot:", url_path="explorer"),
        st.Page(PAGES / "ingest.py", title="Ingest (staff)", icon=":material/upload:", url_path="ingest"),
    ]
)
reachable = sidebar()
# Once per process (later calls return at once): the explorer's first map then finds umap compiled.
numba_warmup.start_in_background(get_settings().numba_warmup)
if not reachable:
    st.error("The database cannot be reached (see the sidebar): this page needs it. Reload once it is back.",
             icon=":material/cloud_off:")
    st.stop()
page.run()
