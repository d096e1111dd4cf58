"""``python -m onnxplain`` = the ``onnxplain`` command."""
import sys

from .cli import main

sys.exit(main())
