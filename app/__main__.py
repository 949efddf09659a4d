"""Entry point for `python -m app`; the same as the `sessionkeeper` console script."""

from app.cli import main

if __name__ == "__main__":
    main()
