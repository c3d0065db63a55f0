"""One thin file per command; each parses options, calls one Repo verb or pipeline function, renders."""
