"""``python -m gczoo.bench layers|models`` = ``gczoo bench layers|models``."""
if __name__ == '__main__':
    from gczoo.bench import main
    from gczoo.runner import run_main
    run_main(main, 'gczoo bench')
