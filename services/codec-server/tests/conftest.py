"""The codec server's tests import their helpers (codec_support) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
