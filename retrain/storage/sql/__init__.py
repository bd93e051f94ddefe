"""SQLAlchemy implementations of the repositories declared in :mod:`retrain.core.ports`.

One module per aggregate; each class turns its rows into the frozen records of
:mod:`retrain.core.records` before they leave, so no ORM row is ever seen outside
``retrain/storage/``. :class:`retrain.storage.repo.Tx` composes them into one unit of work.
"""
