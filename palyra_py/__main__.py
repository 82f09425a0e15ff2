"""``python -m palyra_py`` runs the CLI."""

from palyra_py.cli.main import main

if __name__ == "__main__":
    main()
