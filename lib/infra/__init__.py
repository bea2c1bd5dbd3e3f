"""Infrastructure: profiles (typed config), the result store with provenance, the papermill runner, the device
choice and the data files."""
