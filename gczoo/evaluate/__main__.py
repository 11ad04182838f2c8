"""``python -m gczoo.evaluate`` = ``gczoo eval`` (what scripts/eval.sh runs under torchrun)."""
if __name__ == '__main__':
    from gczoo.evaluate import main
    from gczoo.runner import run_main
    run_main(main, 'gczoo eval')
