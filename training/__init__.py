"""Training side of the project: data, model, export. Never shipped with the plugin."""
