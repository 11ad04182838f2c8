"""``python -m gczoo.train`` = ``gczoo train`` (what scripts/train.sh runs under torchrun)."""
if __name__ == '__main__':
    from gczoo.runner import run_main
    from gczoo.train import main
    run_main(main, 'gczoo train')
