"""BABILong, offline: bAbI facts hidden in order in long background text, BABILong prompts and answer check."""
