"""The similarity map and the occlusion check on /match's compare view, through AppTest."""

from __future__ import annotations

from tests.app.test_match_page import demo, few_references, result_of, upload  # noqa: F401  (fixtures)


def charts(at) -> list[str]:
    """Titles of the plotly charts drawn, as the page built them."""
    import json

    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


def test_the_toggle_shows_the_map_and_the_button_runs_the_occlusion_check(few_references, demo):  # noqa: F811
    at = upload("query.png", demo[0][1])  # stored as a reference: compared with itself first
    assert not at.exception
    before = len(at.get("plotly_chart"))
    at.toggle(key="match_similarity_map").set_value(True).run()
    assert not at.exception and not at.error
    captions = [c for image in at.image for c in image.captions]
    assert captions[-2] == "Query: regions that look alike"
    assert captions[-1].endswith("regions that look alike")
    result = result_of(at)
    key, explained = at.session_state["match_explain"]
    query_sha256 = at.session_state["match_original"][1].sha256  # not rotated or cropped: the upload as normalised
    assert key == (query_sha256, result.matches[0].id, "ViT-B-32/untrained")
    assert explained.query.shape == (7, 7) and explained.query.min() > 0.999  # the same image: alike everywhere
    legend = next(c.value for c in at.caption if "regions whose patch embeddings are alike" in c.value.lower())
    assert "not a causal explanation" in legend and "Decision support, not a diagnosis" in legend
    assert len(at.get("plotly_chart")) == before and "match_occlusion" not in at.session_state  # on demand only

    at.button(key="match_occlusion_go").click().run()
    assert not at.exception and not at.error
    titles = charts(at)
    assert "Similarity drop when each query patch is greyed out" in titles and "Deletion curve" in titles
    check = at.session_state["match_occlusion"][1]
    assert check.drops.shape == (7, 7) and check.deletion.importance[0] == explained.pair_cosine
    assert any(c.value == check.deletion.verdict for c in at.caption)

    at.run()  # any other rerun: the check stays shown, from the session, not computed again
    assert at.session_state["match_occlusion"][1] is check and "Deletion curve" in charts(at)

    at.selectbox(key=f"match_compare_{result.log_id}").set_value(1).run()  # another reference: a new map, no check yet
    assert not at.exception
    assert at.session_state["match_explain"][0][1] == result.matches[1].id and "Deletion curve" not in charts(at)

    at.toggle(key="match_similarity_map").set_value(False).run()
    captions = [c for image in at.image for c in image.captions]
    assert captions[-2] == "Query" and len(at.get("plotly_chart")) == before
