"""Revision scripts. A package only so that setuptools installs them; Alembic skips this file."""
