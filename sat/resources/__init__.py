"""Pretrained model names and their download."""

from sat.resources.download import DownloadError, auto_create, sat_home
from sat.resources.urls import MODEL_URLS, list_avail_pretrained

__all__ = ["MODEL_URLS", "DownloadError", "auto_create", "list_avail_pretrained", "sat_home"]
