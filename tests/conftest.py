"""Shared test set-up: guest assembly helpers live in guestlib.py beside this file."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
