"""The file formats the API and the worker agree on: layout tables and file names, as plain data.

Neutral ground (DESIGN.md): it imports nothing of ours and no ML stack, not even numpy, so the API
streams any download without torch and the worker writes the very same names.
"""
