"""A small Django project served by uvicorn and gunicorn in tests/integrations/test_django.py."""
