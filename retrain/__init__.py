"""retrain: an automated retraining controller for production ML models.

The domain core lives here and never imports Celery; ``workers/`` adapts it to
Celery tasks.
"""

__version__ = "0.1.0"
