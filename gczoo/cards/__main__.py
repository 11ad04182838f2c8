"""``python -m gczoo.cards`` is ``gczoo cards``."""
import sys

from gczoo.cli import run_command

if __name__ == '__main__':
    sys.exit(run_command('cards'))
