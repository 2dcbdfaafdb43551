"""The web page: launch flags, the field table, the page layout and its event handlers."""
