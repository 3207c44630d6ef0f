from pathlib import Path

import pytest

from raiox_core.config import Settings
from raiox_core.errors import ConfigError


def test_defaults_are_embedded_and_local():
    s = Settings.from_env({})
    assert s.embedded_database and s.model == "ViT-B-32" and s.pretrained == "laion2b_s34b_b79k"
    assert s.effective_storage_url.startswith("file://") and s.max_upload_bytes == 20 * 1024 * 1024
    assert s.max_pixels == 50_000_000


def test_every_variable_is_read():
    s = Settings.from_env({
        "RAIOX_DATABASE_URL": "postgresql://u:p@h/db", "RAIOX_DATA_DIR": "/tmp/r", "RAIOX_STORAGE_URL": "s3://b/p",
        "RAIOX_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "RAIOX_MODEL": "ViT-B-16", "RAIOX_PRETRAINED": "openai",
        "RAIOX_DEVICE": "cpu", "RAIOX_MAX_UPLOAD_MB": "5", "RAIOX_MAX_PIXELS": "1000000",
        "RAIOX_MATCH_THRESHOLD": "0.8", "RAIOX_STAFF_PASSWORD": "pw", "RAIOX_PRECISION": "fp32",
    })
    assert (s.database_url, s.data_dir, s.storage_url, s.s3_endpoint_url) == ("postgresql://u:p@h/db", Path("/tmp/r"), "s3://b/p", "http://127.0.0.1:9000")
    assert (s.model, s.pretrained, s.device, s.max_upload_mb, s.max_pixels, s.match_threshold) == ("ViT-B-16", "openai", "cpu", 5.0, 1_000_000, 0.8)
    assert s.precision == "fp32" and Settings.from_env({}).precision == "auto"
    assert "pw" not in repr(s)


@pytest.mark.parametrize("env", [{"RAIOX_DEVICE": "tpu"}, {"RAIOX_PRECISION": "int4"}, {"RAIOX_MAX_UPLOAD_MB": "lots"}, {"RAIOX_MATCH_THRESHOLD": "1.5"}])
def test_bad_values_give_one_sentence(env):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).endswith(".") and list(env)[0] in str(info.value)


def test_the_match_queue_settings():
    assert (Settings().match_batching, Settings().match_batch_window_ms, Settings().match_queue) == (True, 5.0, 64)
    s = Settings.from_env({"RAIOX_MATCH_BATCHING": "off", "RAIOX_MATCH_BATCH_WINDOW_MS": "2.5",
                           "RAIOX_MATCH_BATCH_MAX": "8", "RAIOX_MATCH_QUEUE": "3"})
    assert (s.match_batching, s.match_batch_window_ms, s.match_batch_max, s.match_queue) == (False, 2.5, 8, 3)
    for env in ({"RAIOX_MATCH_BATCHING": "maybe"}, {"RAIOX_MATCH_QUEUE": "0"}):
        with pytest.raises(ConfigError, match=list(env)[0]):
            Settings.from_env(env)
