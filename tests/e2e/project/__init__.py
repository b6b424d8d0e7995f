"""A minimal Django project served by daphne in the end-to-end tests (no database)."""
