"""``cbir serve``: browse and search a collection in the browser (FastAPI, the ``web`` extra).

``model.py`` (the warm, batching model), ``updater.py`` (background indexing with progress),
``collection.py`` (the committed index, reloaded on commit; safe file lookup), ``thumbnails.py``,
``service.py`` (what the API does), ``duplicates.py`` (the near-duplicates review: groups made in
the background and stored with the index, moves and undo), ``uploads.py`` (the upload queue and
its memory), ``app.py`` (HTTP), ``security.py`` (hosts, origins, token, CSRF, headers),
``server.py`` (uvicorn), ``static/`` (the page).
"""
