"""Unmanaged Django models over crmkit's tables (``managed = False``: crmkit owns and migrates them).

Only the columns the admin shows or edits are declared. Enum choices come from the same YAML
catalog as crmkit's (exported by bench_admin.py to ``BENCH_CHOICES``), so labels match.
"""

import json
import os

from django.db import models

with open(os.environ["BENCH_CHOICES"], encoding="utf-8") as _f:
    _CHOICES = json.load(_f)


def choices(entity, field):
    return [(v, label) for v, label in _CHOICES.get(entity, {}).get(field, [])]


def enum(entity, field, **kwargs):
    return models.CharField(max_length=50, choices=choices(entity, field), null=True, blank=True, **kwargs)


def ref(model, column, **kwargs):
    kwargs.setdefault("null", True)
    kwargs.setdefault("blank", True)
    return models.ForeignKey(model, models.DO_NOTHING, db_column=column, related_name="+", **kwargs)


class Unmanaged(models.Model):
    """crmkit's system columns; ``version`` starts at 1 like crmkit's."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    version = models.IntegerField(default=1, editable=False)

    class Meta:
        abstract = True
        managed = False


class Team(Unmanaged):
    name = models.CharField(max_length=100)

    class Meta(Unmanaged.Meta):
        db_table = "team"

    def __str__(self):
        return self.name


class CrmUser(Unmanaged):
    username = models.CharField(max_length=150)
    display_name = models.CharField(max_length=100)

    class Meta(Unmanaged.Meta):
        db_table = "user"

    def __str__(self):
        return self.display_name


class Owned(Unmanaged):
    owner = ref(CrmUser, "owner")
    team = ref(Team, "team")

    class Meta(Unmanaged.Meta):
        abstract = True


class DealStage(Unmanaged):
    name = models.CharField(max_length=100)
    sort_order = models.IntegerField()
    probability = models.DecimalField(max_digits=5, decimal_places=2)

    class Meta(Unmanaged.Meta):
        db_table = "deal_stage"
        ordering = ["sort_order"]

    def __str__(self):
        return self.name


class MarketingActivity(Owned):
    name = models.CharField(max_length=200)

    class Meta(Unmanaged.Meta):
        db_table = "marketing_activity"

    def __str__(self):
        return self.name


class Product(Unmanaged):
    name = models.CharField(max_length=200)
    code = models.CharField(max_length=50, null=True, blank=True)

    class Meta(Unmanaged.Meta):
        db_table = "product"

    def __str__(self):
        return self.name


class Account(Owned):
    name = models.CharField(max_length=200)
    name_kana = models.CharField(max_length=200, null=True, blank=True)
    industry = enum("account", "industry")
    rank = enum("account", "rank")
    prefecture = models.CharField(max_length=10, null=True, blank=True)
    phone = models.CharField(max_length=40, null=True, blank=True)
    website = models.URLField(max_length=2000, null=True, blank=True)

    class Meta(Unmanaged.Meta):
        db_table = "account"

    def __str__(self):
        return self.name


class Contact(Owned):
    account = ref(Account, "account", null=False, blank=False)
    last_name = models.CharField(max_length=100)
    first_name = models.CharField(max_length=100, null=True, blank=True)
    title = models.CharField(max_length=100, null=True, blank=True)
    department = models.CharField(max_length=100, null=True, blank=True)
    email = models.EmailField(max_length=254, null=True, blank=True)
    phone = models.CharField(max_length=40, null=True, blank=True)

    class Meta(Unmanaged.Meta):
        db_table = "contact"

    def __str__(self):
        return f"{self.last_name} {self.first_name or ''}".strip()


class Deal(Owned):
    name = models.CharField(max_length=200)
    account = ref(Account, "account", null=False, blank=False)
    stage = ref(DealStage, "stage", null=False, blank=False)
    amount = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    close_date = models.DateField(null=True, blank=True)
    status = enum("deal", "status")

    class Meta(Unmanaged.Meta):
        db_table = "deal"

    def __str__(self):
        return self.name


class Lead(Owned):
    last_name = models.CharField(max_length=100)
    first_name = models.CharField(max_length=100, null=True, blank=True)
    last_name_kana = models.CharField(max_length=100, null=True, blank=True)
    first_name_kana = models.CharField(max_length=100, null=True, blank=True)
    full_name = models.CharField(max_length=201, null=True, editable=False)
    company = models.CharField(max_length=200, null=True, blank=True)
    title = models.CharField(max_length=100, null=True, blank=True)
    department = models.CharField(max_length=100, null=True, blank=True)
    email = models.EmailField(max_length=254, null=True, blank=True)
    phone = models.CharField(max_length=40, null=True, blank=True)
    mobile = models.CharField(max_length=40, null=True, blank=True)
    website = models.URLField(max_length=2000, null=True, blank=True)
    prefecture = models.CharField(max_length=10, null=True, blank=True)
    industry = enum("lead", "industry")
    annual_revenue = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    employees = models.IntegerField(null=True, blank=True)
    source = enum("lead", "source")
    status = enum("lead", "status", default="new")
    rating = enum("lead", "rating")
    unqualified_reason = models.TextField(null=True, blank=True)
    marketing_activity = ref(MarketingActivity, "marketing_activity")
    product_interest = ref(Product, "product_interest")
    description = models.TextField(null=True, blank=True)

    class Meta(Unmanaged.Meta):
        db_table = "lead"

    def save(self, *args, **kwargs):
        self.full_name = self.last_name + (" " + self.first_name if self.first_name else "")  # computed in crmkit
        super().save(*args, **kwargs)

    def __str__(self):
        return self.full_name or self.last_name


class Activity(Owned):
    subject = models.CharField(max_length=255)
    type = enum("activity", "type")
    status = enum("activity", "status")
    due_at = models.DateTimeField(null=True, blank=True)
    assignee = ref(CrmUser, "assignee")
    lead = ref(Lead, "lead")
    account = ref(Account, "account")

    class Meta(Unmanaged.Meta):
        db_table = "activity"

    def __str__(self):
        return self.subject
