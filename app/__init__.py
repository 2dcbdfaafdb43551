"""Front-ends: the command line (app.cli), the web page (app.web) and the HTTP API. They build settings and
hand them to the engine; nothing below imports them."""
