"""`dxr-node user add|disable|enable|list`: the console's reader accounts."""

from __future__ import annotations

import argparse
import getpass
import sys

from dxr_node.commands.node import _config, _fail
from dxr_node.node.config import ConfigError
from dxr_node.node.review_store import AccountError, ReviewStore
from dxr_node.node.store import Store, StoreError

MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps a pasted file out


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline(MAX_PASSWORD + 1).rstrip("\r\n")
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        with Store(config.database_target) as store:  # creates a fresh node's database
            accounts = ReviewStore(store)
            if args.action == "list":
                for user in accounts.users():
                    state = "disabled" if user.disabled else "enabled"
                    print(f"{user.username}\t{user.role}\t{state}\t{user.display_name}")
                return 0
            if not args.username:
                return _fail(f"user {args.action}: a username is needed")
            if args.action == "add":
                password = _password(args)
                if len(password) > MAX_PASSWORD:
                    raise AccountError(f"password: at most {MAX_PASSWORD} characters")
                user = accounts.add_user(args.username, args.name or args.username,
                                         args.role, password)
                print(f"added {user.username} ({user.role})")
                return 0
            disable = args.action == "disable"
            if not accounts.set_disabled(args.username, disable):
                return _fail(f"no user {args.username!r}")
            print(f"{'disabled' if disable else 'enabled'} {args.username}")
            return 0
    except (ConfigError, StoreError, AccountError) as exc:
        return _fail(str(exc))

