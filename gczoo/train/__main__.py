"""``python -m gczoo.train`` = ``gczoo train`` (what scripts/train.sh runs under torchrun)."""
import sys

if __name__ == '__main__':
    from gczoo.cli import run_command
    sys.exit(run_command('train'))
