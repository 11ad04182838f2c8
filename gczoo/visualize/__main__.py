"""``python -m gczoo.visualize``: the same as ``gczoo visualize``, through the one CLI runner."""
import sys

if __name__ == '__main__':
    from gczoo.cli import run_command
    sys.exit(run_command('visualize'))
