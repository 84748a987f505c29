"""A port of the gevent sample's pipeline (Ian Juma, "The actor model in python with gevent",
2016), written from the article and DESIGN.md, for the benchmark only.

Its shape is kept on purpose: an Actor is a Greenlet with a Queue inbox; BaseService builds the
URL, fetches with requests (timeout 120, DEFAULT_RETRIES = 5), and handles one user at a time
(spawn a fetch greenlet, join it, sleep(0), process); each row is one INSERT followed by its own
commit on a blocking driver (PyMySQL) under gevent's monkey patching; the three services run
concurrently. Differences from the sample, for a fair comparison only: rows go to the same
tables as the Rust pipeline (with the currency and updated_at columns, so the same schema is
written), and the date comes from the command line instead of Redis.

usage: sample_port.py BASE_URL APIKEY MYSQL_DB DATE
prints: users=<user fetches> seconds=<wall time>
"""
from gevent import monkey

monkey.patch_all()

import sys
import time
from urllib.parse import urlencode

import gevent
import pymysql
import requests
from gevent.queue import Queue

requests.adapters.DEFAULT_RETRIES = 5

BASE_URL, API_KEY, DB, DATE = sys.argv[1:5]


class Actor(gevent.Greenlet):
    def __init__(self):
        self.inbox = Queue()
        gevent.Greenlet.__init__(self)

    def receive(self, message):
        raise NotImplementedError()

    def _run(self):
        self.running = True
        while self.running:
            message = self.inbox.get()
            self.receive(message)


class BaseService(Actor):
    base_url = BASE_URL
    date = ""

    def __init__(self):
        Actor.__init__(self)
        self.db = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=DB)
        self.users = 0

    def build_url(self, username=None):
        view = self.get_view() + "&startDate=%s&endDate=%s" % (self.date, self.date)
        if username is None:
            return self.base_url + view
        return self.base_url + view + "&" + urlencode({"username": username})

    def fetch_(self, url):
        r = requests.get(url, headers={"apikey": API_KEY}, timeout=120)
        return r.json()

    def receive(self, message):
        if message is None:
            self.running = False
            return
        username = message.get("username")
        self.date = message.get("date")
        if username is not None:
            thread = gevent.spawn(self.fetch_, self.build_url(username=username))
            thread.join()
            gevent.sleep(0)
            return self.process_user_response(thread.value, username)
        thread = gevent.spawn(self.fetch_, self.build_url(username=None))
        thread.join()
        gevent.sleep(0)
        return self.process_response(thread.value)

    def process_response(self, response):
        for user in response["responses"]["userStats"][0]["elements"]:
            self.inbox.put({"date": self.date, "username": user})
        self.inbox.put(None)

    def process_user_response(self, response, username):
        self.users += 1
        for entry in response["responses"]["networkStats"]:
            for key, value in entry["elements"].items():
                if "(" not in key or ")" not in key:
                    continue
                country = key.split("(")[0].strip()
                network = key.split("(")[1].split(")")[0].strip()
                self.insert(username, country, network, value)

    def insert(self, username, country, network, value):
        raise NotImplementedError()


class MoneyService(BaseService):
    def insert(self, username, country, network, value):
        try:
            currency, amount = value.split()
        except (AttributeError, ValueError):
            return
        with self.db.cursor() as c:
            c.execute(
                "INSERT INTO " + self.table + " (username, date, network, country, cost, currency, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, NOW())",
                (username, self.date, network, country, amount, currency),
            )
        self.db.commit()


class BulkSmsCost(MoneyService):
    table = "bulk_sms_networks_cost"

    def get_view(self):
        return "bulkSms/sent?granularity=day&metric=cost&currencyCode=USD"


class AirtimeDelivered(MoneyService):
    table = "airtime_networks_delivered"

    def get_view(self):
        return "airtime/delivered?granularity=day&metric=cost&currencyCode=USD"


class BulkSmsFailed(BaseService):
    table = "bulk_sms_networks_failed"

    def get_view(self):
        return "bulkSms/failed?granularity=day&metric=count"

    def insert(self, username, country, network, value):
        if not isinstance(value, int) or value < 0:
            return
        with self.db.cursor() as c:
            c.execute(
                "INSERT INTO bulk_sms_networks_failed (username, date, network, country, failed, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, NOW())",
                (username, self.date, network, country, value),
            )
        self.db.commit()


if __name__ == "__main__":
    t0 = time.time()
    services = [BulkSmsCost(), BulkSmsFailed(), AirtimeDelivered()]
    for s in services:
        s.start()
        s.inbox.put({"date": DATE})
    gevent.joinall(services)
    print("users=%d seconds=%.3f" % (sum(s.users for s in services), time.time() - t0))
