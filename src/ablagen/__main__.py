from ablagen.cli import _entry

_entry()
