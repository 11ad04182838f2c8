"""``python -m gczoo.bench layers|models`` = ``gczoo bench layers|models``."""
import sys

from gczoo.cli import run_command

if __name__ == '__main__':
    sys.exit(run_command('bench'))
