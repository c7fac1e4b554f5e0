"""``python -m smartflow_streams.cli``: the ``smartflow`` command (:func:`smartflow_streams.cli.commands.main`)."""

from smartflow_streams.cli.commands import main

if __name__ == "__main__":
    main()
