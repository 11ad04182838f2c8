"""``python -m gczoo.cards`` is ``gczoo cards``."""
if __name__ == '__main__':
    from gczoo.cards import main
    from gczoo.runner import run_main
    run_main(main, 'gczoo cards')
