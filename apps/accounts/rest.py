"""The management API (DRF) at /api/admin/: teams, memberships, virtual accounts and keys.

Viewsets are thin: querysets come from identity-scoped selectors (an object outside the
caller's reach is a 404), writes go through the services (and so the audit log), and
serializers only validate. A key's secret appears once, in the response that created it.
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from . import selectors
from .constants import Role
from .exceptions import AccountsError
from .models import ApiKey, Membership, Team, VirtualAccount
from .permissions import (
    KEY_ROLES,
    TEAM_ROLES,
    HasPortalRole,
    administers_team,
    assignable_roles,
    can_change_membership,
    can_edit_enforced_tags,
    request_identity,
)
from .services import (
    DEFAULT_GRACE_HOURS,
    UNCHANGED,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    membership_remove,
    membership_set,
    team_create,
    team_update,
    virtual_account_create,
    virtual_account_update,
)

User = get_user_model()


def call_service(service, **kwargs):
    """Run a service; its domain errors become a 400 with the error's message."""
    try:
        return service(**kwargs)
    except AccountsError as exc:
        raise ValidationError({"detail": str(exc)}) from exc
    except DjangoValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        raise ValidationError(detail) from exc
    except IntegrityError as exc:
        raise ValidationError({"detail": "conflicts with an existing object"}) from exc


def bool_param(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValidationError({"active": "use true or false"})


def int_param(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValidationError({name: "must be an integer id"}) from exc


class AdminApiPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class ScopedViewSet(viewsets.GenericViewSet):
    permission_classes = [IsAuthenticated, HasPortalRole]
    pagination_class = AdminApiPagination
    allowed_roles = TEAM_ROLES

    @property
    def identity(self):
        return request_identity(self.request)


class TagsField(serializers.DictField):
    def __init__(self, **kwargs):
        kwargs.setdefault("child", serializers.CharField(allow_blank=True))
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)


# --- Teams ---------------------------------------------------------------------------------


class TeamSerializer(serializers.ModelSerializer):
    default_tags = TagsField()
    required_tag_keys = serializers.ListField(child=serializers.CharField(), required=False)

    class Meta:
        model = Team
        fields = [
            "id",
            "name",
            "slug",
            "default_tags",
            "required_tag_keys",
            "allow_request_logging",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"slug": {"required": False}}


class TeamViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    ScopedViewSet,
):
    """Admins see and create every team; team admins see and edit the teams they run."""

    serializer_class = TeamSerializer

    def get_queryset(self):
        return selectors.teams_administered_by(identity=self.identity).order_by("name")

    def perform_create(self, serializer):
        if not self.identity.is_admin:
            raise PermissionDenied("Only admins create teams.")
        # One service call: a bad setting must not leave a half-created team behind.
        serializer.instance = call_service(
            team_create, actor=self.request.user, **serializer.validated_data
        )

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        data.pop("slug", None)  # a slug is a stable handle
        serializer.instance = call_service(
            team_update, team=serializer.instance, actor=self.request.user, **data
        )


# --- Memberships ----------------------------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "user", "username", "team", "role", "created_at"]
        read_only_fields = ["id", "created_at"]
        validators = []  # membership_set is an upsert

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            identity = request_identity(request)
            # An id outside the caller's teams reads as "does not exist".
            self.fields["team"].queryset = selectors.teams_administered_by(identity=identity)
            self.fields["user"].queryset = User.objects.filter(is_active=True)
            if self.instance is not None and not isinstance(self.instance, list):
                self.fields["user"].read_only = True
                self.fields["team"].read_only = True

    def validate_role(self, value):
        identity = request_identity(self.context["request"])
        if value not in assignable_roles(identity):
            raise serializers.ValidationError("You may not grant this role.")
        return value


class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ScopedViewSet,
):
    """Members of the teams the caller administers. POST upserts (user, team) → role."""

    serializer_class = MembershipSerializer

    def get_queryset(self):
        rows = selectors.membership_list(identity=self.identity)
        params = self.request.query_params
        team_id = int_param(params.get("team"), "team")
        user_id = int_param(params.get("user"), "user")
        if team_id is not None:
            rows = rows.filter(team_id=team_id)
        if user_id is not None:
            rows = rows.filter(user_id=user_id)
        return rows

    def _check_changeable(self, membership):
        if not can_change_membership(self.identity, membership):
            raise PermissionDenied("Only an admin can change this membership.")

    def perform_create(self, serializer):
        data = serializer.validated_data
        existing = (
            selectors.membership_list(identity=self.identity)
            .filter(user=data["user"], team=data["team"])
            .first()
        )
        if existing is not None:
            self._check_changeable(existing)
        serializer.instance = call_service(
            membership_set,
            user=data["user"],
            team=data["team"],
            role=data["role"],
            actor=self.request.user,
        )

    def perform_update(self, serializer):
        self._check_changeable(serializer.instance)
        membership = serializer.instance
        role = serializer.validated_data.get("role", membership.role)
        serializer.instance = call_service(
            membership_set,
            user=membership.user,
            team=membership.team,
            role=role,
            actor=self.request.user,
        )

    def perform_destroy(self, instance):
        self._check_changeable(instance)
        call_service(
            membership_remove, user=instance.user, team=instance.team, actor=self.request.user
        )


# --- Virtual accounts --------------------------------------------------------------------------


class VirtualAccountSerializer(serializers.ModelSerializer):
    default_tags = TagsField()

    class Meta:
        model = VirtualAccount
        fields = ["id", "team", "name", "description", "default_tags", "is_active", "created_at"]
        read_only_fields = ["id", "created_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            self.fields["team"].queryset = selectors.teams_administered_by(
                identity=request_identity(request)
            )
        if self.instance is not None and not isinstance(self.instance, list):
            self.fields["team"].read_only = True
            self.fields["name"].read_only = True


class VirtualAccountViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    ScopedViewSet,
):
    """Service accounts of the caller's teams. Deactivate with `PATCH {"is_active": false}`."""

    serializer_class = VirtualAccountSerializer

    def get_queryset(self):
        rows = selectors.virtual_accounts_visible_to(identity=self.identity).order_by("name")
        params = self.request.query_params
        team_id = int_param(params.get("team"), "team")
        active = bool_param(params.get("active"))
        if team_id is not None:
            rows = rows.filter(team_id=team_id)
        if active is not None:
            rows = rows.filter(is_active=active)
        return rows

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = call_service(
            virtual_account_create,
            team=data["team"],
            name=data["name"],
            description=data.get("description", ""),
            default_tags=data.get("default_tags"),
            actor=self.request.user,
        )

    def perform_update(self, serializer):
        serializer.instance = call_service(
            virtual_account_update,
            virtual_account=serializer.instance,
            actor=self.request.user,
            **serializer.validated_data,
        )


# --- Keys ------------------------------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner_label", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "team",
            "user",
            "virtual_account",
            "owner",
            "lineage_id",
            "rotated_from",
            "default_tags",
            "enforced_tag_keys",
            "allowed_models",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    user = serializers.PrimaryKeyRelatedField(
        queryset=User.objects.filter(is_active=True),
        required=False,
        help_text="Owner user; defaults to the caller. Another user needs a team you administer.",
    )
    virtual_account = serializers.PrimaryKeyRelatedField(
        queryset=VirtualAccount.objects.none(), required=False
    )
    team = serializers.PrimaryKeyRelatedField(queryset=Team.objects.none(), required=False)
    default_tags = TagsField()
    allowed_models = serializers.ListField(child=serializers.CharField(), required=False)
    expires_in_days = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=3650
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            identity = request_identity(request)
            self.fields["virtual_account"].queryset = selectors.virtual_accounts_visible_to(
                identity=identity
            ).filter(is_active=True)
            self.fields["team"].queryset = selectors.teams_visible_to(identity=identity)

    def validate(self, attrs):
        request = self.context["request"]
        identity = request_identity(request)
        if attrs.get("virtual_account") is not None:
            if attrs.get("user") is not None:
                raise serializers.ValidationError("Give a user or a virtual account, not both.")
            attrs.pop("team", None)
            return attrs
        owner = attrs.get("user") or request.user
        if owner.pk != request.user.pk:
            team = attrs.get("team")
            if team is None or not administers_team(identity, team.pk):
                raise serializers.ValidationError(
                    {"team": "A key for another user needs a team you administer."}
                )
        attrs["user"] = owner
        return attrs


class ApiKeyUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    allowed_models = serializers.ListField(child=serializers.CharField(), required=False)
    default_tags = TagsField()
    enforced_tag_keys = serializers.ListField(child=serializers.CharField(), required=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_hours = serializers.FloatField(
        required=False, default=DEFAULT_GRACE_HOURS, min_value=0, max_value=24 * 30
    )


class ApiKeyRevokeSerializer(serializers.Serializer):
    """No body: revocation takes effect at once and cannot be undone."""


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ScopedViewSet,
):
    """Keys in the caller's scope. Filters: `team`, `user`, `active` (true: not revoked)."""

    allowed_roles = KEY_ROLES

    def get_serializer_class(self):
        return {
            "create": ApiKeyCreateSerializer,
            "partial_update": ApiKeyUpdateSerializer,
            "rotate": ApiKeyRotateSerializer,
            "revoke": ApiKeyRevokeSerializer,
        }.get(self.action, ApiKeySerializer)

    def get_queryset(self):
        params = self.request.query_params
        return selectors.api_key_list(
            user=self.request.user,
            identity=self.identity,
            team_id=int_param(params.get("team"), "team"),
            owner_user_id=int_param(params.get("user"), "user"),
            active=bool_param(params.get("active")),
        )

    def _with_secret(self, key, secret: str, status_code: int) -> Response:
        key.secret = secret
        response = Response(ApiKeyWithSecretSerializer(key).data, status=status_code)
        response["Cache-Control"] = "no-store"
        return response

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = call_service(api_key_issue, actor=request.user, **serializer.validated_data)
        return self._with_secret(key, secret, status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        key = self.get_object()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "enforced_tag_keys" in data and not can_edit_enforced_tags(self.identity, key):
            raise PermissionDenied("Only the key team's admins change enforced tags.")
        data.setdefault("expires_at", UNCHANGED)
        key = call_service(api_key_update, key=key, actor=request.user, **data)
        return Response(ApiKeySerializer(key).data)

    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        key = self.get_object()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        new_key, secret = call_service(
            api_key_rotate,
            key=key,
            actor=request.user,
            grace_hours=serializer.validated_data["grace_hours"],
        )
        return self._with_secret(new_key, secret, status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        key = call_service(api_key_revoke, key=self.get_object(), actor=request.user)
        return Response(ApiKeySerializer(key).data)
