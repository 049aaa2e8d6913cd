"""Send the ``crm`` app's models to the crmkit database; never migrate it (crmkit owns those tables)."""


class CrmRouter:
    def db_for_read(self, model, **hints):
        return "crm" if model._meta.app_label == "crm" else None

    def db_for_write(self, model, **hints):
        return "crm" if model._meta.app_label == "crm" else None

    def allow_relation(self, obj1, obj2, **hints):
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if db == "crm" or app_label == "crm":
            return False
        return None
