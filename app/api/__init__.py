"""The HTTP API (/v1): jobs in, PNGs out, for scripts, product backends and several users.

routes.py builds the FastAPI app over a backend (backend.py: the job queue in this process, or worker
processes, one per GPU; ray_serve.py: Ray Serve replicas across machines); auth.py decides who the caller is
(the page's logins and API keys); mount.py puts it next to the Gradio page; app/cli/serve.py serves it alone.
"""
