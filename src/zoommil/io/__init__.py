"""Files on disk: coords and feature files, slide sheets, JSON, atomic writes."""
