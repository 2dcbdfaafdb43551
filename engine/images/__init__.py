"""Images in: reading user pictures safely, fitting them to a size, and control-map preprocessors."""
