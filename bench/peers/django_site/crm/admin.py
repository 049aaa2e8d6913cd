"""Django admin over crmkit's tables, configured as a competent Django user would for 1,000,000 leads.

The lead screen mirrors crmkit's: the same list columns, page size (50), default order (newest
first), searchable fields (Django searches with ``icontains`` = ``LIKE '%term%'``) and enum filters;
``list_select_related`` for the owner; ``show_full_result_count = False`` (Django's own advice for
big tables); references to big tables as ``autocomplete_fields``.
"""

from django.contrib import admin

from crm import models


@admin.register(models.CrmUser)
class UserAdmin(admin.ModelAdmin):
    list_display = ("username", "display_name")
    search_fields = ("username", "display_name")


@admin.register(models.Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("name", "industry", "rank", "prefecture", "phone", "owner")
    list_select_related = ("owner",)
    list_per_page = 50
    ordering = ("name", "id")
    search_fields = ("name", "name_kana", "phone", "website", "prefecture")
    show_full_result_count = False


@admin.register(models.Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("last_name", "first_name", "account", "title", "department", "email", "phone", "owner")
    list_select_related = ("account", "owner")
    list_per_page = 50
    search_fields = ("last_name", "first_name", "title", "department", "email", "phone")
    autocomplete_fields = ("account",)
    show_full_result_count = False


@admin.register(models.Deal)
class DealAdmin(admin.ModelAdmin):
    list_display = ("name", "account", "stage", "amount", "close_date", "owner")
    list_select_related = ("account", "stage", "owner")
    list_per_page = 50
    ordering = ("-close_date", "-id")
    search_fields = ("name",)
    autocomplete_fields = ("account",)
    show_full_result_count = False


@admin.register(models.Activity)
class ActivityAdmin(admin.ModelAdmin):
    list_display = ("subject", "type", "status", "due_at", "assignee", "account")
    list_select_related = ("assignee", "account")
    list_per_page = 50
    ordering = ("-due_at", "-id")
    search_fields = ("subject",)
    autocomplete_fields = ("account", "lead")
    show_full_result_count = False


@admin.register(models.Lead)
class LeadAdmin(admin.ModelAdmin):
    list_display = ("last_name", "first_name", "company", "status", "source", "owner", "created_at")
    list_select_related = ("owner",)
    list_filter = ("status", "source", "industry", "rating", "owner")
    list_per_page = 50
    ordering = ("-created_at", "-id")
    search_fields = ("last_name", "first_name", "last_name_kana", "first_name_kana", "company", "email", "phone")
    show_full_result_count = False
    fieldsets = (
        ("Name", {"fields": (("last_name", "first_name"), ("last_name_kana", "first_name_kana"))}),
        ("Company", {"fields": ("company", "department", "title", "industry", "annual_revenue", "employees")}),
        ("Contact details", {"fields": ("email", "phone", "mobile", "website", "prefecture")}),
        ("Lead details", {"fields": ("status", "rating", "source", "marketing_activity", "product_interest",
                                     "unqualified_reason")}),
        ("Additional information", {"fields": ("description", "owner", "team")}),
    )
