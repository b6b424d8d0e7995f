"""The page: ``/`` is the lobby, ``/room/<name>/`` any other room."""

from __future__ import annotations

from chat.routing import ROOM_NAME
from django.urls import re_path
from django.views.generic import TemplateView

page = TemplateView.as_view(template_name="chat.html")

urlpatterns = [
    re_path(r"^$", page, name="lobby"),
    re_path(rf"^room/{ROOM_NAME}/$", page, name="room"),
]
