"""`python -m workers.cli`, the same as the `careweave` command."""

from workers.cli import app

if __name__ == "__main__":
    app()
