"""The benchmark harness behind ``make bench`` (see ``python -m bench --help``)."""
