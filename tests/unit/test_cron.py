"""The one cron reader (retrain.core.cron, croniter underneath) reads an entry as Celery's crontab,
which beat runs, does; the model file is validated with it."""

from __future__ import annotations

import pytest
from celery.schedules import crontab
from pydantic import ValidationError

from retrain.config import ScheduleSettings
from retrain.core.cron import Crontab


@pytest.mark.parametrize("fields", [
    {"minute": "0", "hour": "2"},
    {"minute": "*/15", "hour": "9-17", "day_of_week": "mon-fri"},
    {"minute": "0,30", "hour": "1-3", "day_of_month": "1-7", "day_of_week": "sun"},
    {"minute": "5", "hour": "*/6", "month_of_year": "1,4,7,10", "day_of_month": "15"},
    {"minute": "10-50/20", "hour": "0", "day_of_week": "sat,sun"},
])
def test_the_fields_mean_what_celerys_crontab_makes_of_them(fields):
    ours = Crontab.from_fields(fields, "UTC")
    theirs = crontab(**fields)
    assert ours.sets == (theirs.minute, theirs.hour, theirs.day_of_month, theirs.month_of_year, theirs.day_of_week)


@pytest.mark.parametrize("entry, says", [("61 * * * *", "cannot read the crontab"),
                                         ("0 2 * *", "must have 5 fields"),
                                         ("0 2 * * funday", "cannot read the crontab")])
def test_a_crontab_the_reader_cannot_read_is_refused_in_the_model_file(entry, says):
    with pytest.raises(ValidationError, match=says):
        ScheduleSettings(cron=(entry,))


def test_the_schedule_shortcuts_become_the_same_fields():
    s = ScheduleSettings(daily="02:30", weekly="sun 03:00", monthly="1 04:15", cron=("*/10 * * * *",))
    slots = s.crontab_fields()
    assert slots["daily"] == {"minute": "30", "hour": "2"}
    assert slots["weekly"] == {"minute": "0", "hour": "3", "day_of_week": "sun"}
    assert slots["monthly"] == {"minute": "15", "hour": "4", "day_of_month": "1"}
    assert all(Crontab.from_fields(f, "UTC") for f in slots.values())
