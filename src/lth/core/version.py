"""lth's version, recorded in every ticket and report."""
__version__ = "0.1.0"
