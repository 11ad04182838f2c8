"""``python -m gczoo.evaluate`` = ``gczoo eval`` (what scripts/eval.sh runs under torchrun)."""
import sys

from gczoo.cli import run_command

sys.exit(run_command('eval'))
