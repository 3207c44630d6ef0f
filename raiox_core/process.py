"""Process-wide set-up, done once by each entry point (the `raiox` command, the dashboard, the API) and
never on import or inside a library function: Raiox's modules stay safe to import into someone else's
process.

- malloc thresholds that keep the encoder's freed activations for reuse (allocator.py);
- numba's cache directory, before anything imports umap (numba_cache.py);
- credentials masked in the debug logs of boto3, botocore, urllib3 and s3transfer;
- pydicom's warnings about a broken file kept from the terminal and the page (the refusal says it).
"""

from __future__ import annotations

import logging
import re
import warnings

from .allocator import keep_freed_memory
from .numba_cache import configure_numba_cache
from .redact import redact_urls_in

_NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")
# botocore logs each signed request at DEBUG: temporary credentials' session token included.
_SESSION_TOKEN = re.compile(r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^\s'\"&,}]+", re.IGNORECASE)
# An API key (api_keys.PREFIX + 43 url-safe characters), e.g. in a webhook URL's path.
_API_KEY = re.compile(r"\brx_[A-Za-z0-9_-]{16,}")
_configured = False


def configure() -> None:
    """Everything above, once per process (later calls do nothing)."""
    global _configured
    if _configured:
        return
    _configured = True
    keep_freed_memory()
    configure_numba_cache()
    _mask_credentials_in_logs()
    _quiet_pydicom()


def mask_credentials(message: str) -> str:
    """A log message with session tokens, API keys and the user:password@ of URLs replaced by ***."""
    return _API_KEY.sub("rx_***", redact_urls_in(_SESSION_TOKEN.sub(r"\1***", message)))


def _mask_credentials_in_logs() -> None:
    """Mask the records of the S3 client's loggers as they are made, whatever handler receives them (a
    filter on a logger would see only that very logger's records, not its children's)."""
    make_record = logging.getLogRecordFactory()

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.name.split(".")[0] in _NOISY_LOGGERS:
            message = record.getMessage()
            masked = mask_credentials(message)
            if masked != message:
                record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(masked_record)


def _quiet_pydicom() -> None:
    # pydicom's own logger keeps its handlers for anyone who turns on pydicom.config.debug().
    logging.getLogger("pydicom").propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
