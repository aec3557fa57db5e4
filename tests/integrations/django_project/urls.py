from django.urls import path

from tests.integrations.django_project import views

urlpatterns = [
    path("health", views.health),
    path("tools/pay", views.pay),
    path("tools/checkout", views.checkout),
    path("tools/apay", views.apay),
    path("tools/stream", views.stream),
    path("tools/astream", views.astream),
    path("tools/special/pay", views.pay),
]
