"""Three wsgate nodes behind HAProxy and nginx (deploy/haproxy.cfg,
deploy/nginx.conf; docs/scaling.md): 12 clients subscribe through the two
proxies, publications go through them, node 2 is killed mid-way; every
client must get every publication, in order, those of node 2 after
reconnecting through the proxy with `recover` (recovered: true).
Not part of CI (needs haproxy, nginx and `pip install websockets pyjwt`);
start the nodes as docs/benchmarks.md "Several nodes" says, then run
`python3 scripts/lb-check.py`."""
import asyncio, json, time, jwt, sys, urllib.request, subprocess
import websockets
SECRET="lb-secret-lb-secret-lb-secret-lb-secret"
def tok(u): return jwt.encode({"sub":u,"exp":int(time.time())+600}, SECRET, algorithm="HS256")
def publish(port, i):
    req=urllib.request.Request(f"http://127.0.0.1:{port}/api/publish", data=json.dumps({"channel":"news:lb","data":{"i":i}}).encode(), headers={"x-api-key":"lb-api-key-0123456789","content-type":"application/json"})
    return json.load(urllib.request.urlopen(req))
async def client(port, name, log):
    pos=None; got=[]; conns=0
    while len(got) < 6:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization":"Bearer "+tok(name)}) as ws:
                hello=json.loads(await ws.recv()); conns+=1
                sub={"type":"subscribe","id":"s","payload":{"channel":"news:lb"}}
                if pos: sub["payload"]["recover"]=pos
                await ws.send(json.dumps(sub))
                async for m in ws:
                    m=json.loads(m)
                    if m["type"]=="subscribed" and pos: log.append((name, "recovered", m["payload"].get("recovered")))
                    if m["type"]=="message":
                        p=m["payload"]; pos={"offset":p["offset"],"epoch":p["epoch"]}; got.append(p["data"]["i"])
                        if len(got)>=6: break
        except Exception as e:
            log.append((name,"reconnect",type(e).__name__)); await asyncio.sleep(0.3)
    return name, got, conns
async def main():
    log=[]
    tasks=[asyncio.create_task(client(p, f"{lb}-{k}", log)) for lb,p in (("haproxy",18080),("nginx",18081)) for k in range(6)]
    await asyncio.sleep(1.5)
    for i in range(1,4): publish(18080 if i%2 else 18081, i)
    await asyncio.sleep(1)
    pid=open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lb/n2.pid").read().strip(); subprocess.run(["kill","-9",pid])
    print("killed node 2")
    await asyncio.sleep(0.5)
    for i in range(4,7): publish(18080, i); await asyncio.sleep(0.3)
    res=await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for r in res: print(r)
    print("events:", log)
asyncio.run(main())
