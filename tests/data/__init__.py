"""Fixture generators: tiny datasets in the real layouts, written into tmp_path by the tests."""
