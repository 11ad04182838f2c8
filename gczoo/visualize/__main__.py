"""``python -m gczoo.visualize``: the same as ``gczoo visualize``, through the one runner."""
if __name__ == '__main__':
    from gczoo.runner import run_main
    from gczoo.visualize import main
    run_main(main, 'gczoo visualize')
